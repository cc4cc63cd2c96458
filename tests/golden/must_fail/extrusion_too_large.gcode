; expect: extrusion_too_large line 6 "Move exceeds maximum extrusion (1.203mm^2 vs 0.640mm^2)"
G28
M109 S200
G92 E0
G1 Z0.2 X20 Y20 F3000
G1 X30 E5 F1200
