; expect: move_out_of_range at lines 15
; G92 X0 at X 200 shifts the origin: X100 is machine X 300
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
G1 X200
G92 X0
G1 X100
