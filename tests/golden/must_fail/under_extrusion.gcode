; expect: under_extrusion line 7 "melt capacity"
G28
M190 S60
M109 S210
M83
G1 Z0.3 X20 Y50 F6000
G1 X200 E30 F15000
