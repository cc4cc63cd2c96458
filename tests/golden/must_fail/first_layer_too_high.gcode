; expect: first_layer_too_high line 7 "First layer too high"
G28
M190 S60
M109 S210
G92 E0
G1 Z0.8 X50 Y50 F3000
G1 X80 E1.0 F1200
