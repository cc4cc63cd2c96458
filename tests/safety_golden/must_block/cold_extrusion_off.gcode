; expect: cold_extrusion at lines 16
; extrudes after the hotend was turned off
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
G1 X20 E1
M104 S0
G1 E-1
G1 X30 E-0.5
