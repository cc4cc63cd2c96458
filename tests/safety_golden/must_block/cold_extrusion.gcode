; expect: cold_extrusion at lines 6
; extrudes after M104 without waiting
G28
M104 S210
G1 Z0.3 F600
G1 X20 Y20 E1
