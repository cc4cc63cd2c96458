; expect: temperature_out_of_range line 2 "Requested temperature (150.0) out of range (0.0:130.0)"
SET_HEATER_TEMPERATURE HEATER=heater_bed TARGET=150
