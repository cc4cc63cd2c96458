; expect: forbidden_command at lines 3, 5
; PID autotune above the hotend's 250 C
M303 E0 S300 C8
PID_CALIBRATE HEATER=extruder TARGET=210
PID_CALIBRATE HEATER=extruder TARGET=290
