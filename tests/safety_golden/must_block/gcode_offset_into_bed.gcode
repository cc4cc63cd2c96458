; expect: z_into_bed at lines 15
; a small offset that moves an extruding Z 0.3 layer to Z 0
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
SET_GCODE_OFFSET Z=-0.3
G1 X30 E1
G1 X40 Z0.3 E2
