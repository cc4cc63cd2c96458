; expect: cold_extrusion line 5 "Extrude below minimum temp"
G28
M104 S200
G1 Z0.2 X20 Y20 F3000
G1 X40 E1 F1200
