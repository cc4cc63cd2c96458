; expect: temperature_out_of_range line 3 "Requested temperature (300.0) out of range (0.0:250.0)"
G28
M104 S300
