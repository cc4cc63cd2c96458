; expect: heater_timeout at lines 13
; waits for 240 C with a 210 C target: hangs with the heater on
G90
M82
M140 S60
M104 S210
G28
M190 S60
M109 S210
G92 E0
G1 Z0.3 F600
G1 X10 Y10 F6000
TEMPERATURE_WAIT SENSOR=extruder MINIMUM=240
