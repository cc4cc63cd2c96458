; expect: move_out_of_range at lines 14
; arc between in-range ends bulging past Y 235
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
G1 X100 Y228
G2 X120 Y228 I10 J0 E1
