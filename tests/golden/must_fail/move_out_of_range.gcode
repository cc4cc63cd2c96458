; expect: move_out_of_range line 6 "Move out of range: 240.000 10.000 0.200 [0.000]"
G28
M104 S200
M109 S200
G1 Z0.2 F600
G1 X240 Y10 F3000
