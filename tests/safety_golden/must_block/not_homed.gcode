; expect: must_home_first at lines 4, 6
; move before G28
M104 S210
G1 X10 Y10
G28 X Y
G1 Z5
