; expect: forbidden_command at lines 13, 14
; m302 and save_config in lower case
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
m302 s0
save_config
