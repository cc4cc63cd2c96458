; expect: hidden_in_comment at lines 13, 14
; words a firmware without ( ) comments would run
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
G1 X20 (Z-5
G1 X30 (Z-5)
G1 X40 (just a note)
