; expect: forbidden_command at lines 13
; M211 S0 switches software endstops off
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
M211 S0
