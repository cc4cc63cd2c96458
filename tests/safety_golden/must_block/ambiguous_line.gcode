; expect: ambiguous_line at lines 13, 14
; repeated words and two commands on one line
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
G1 X10 X30
G4 P10 M302
