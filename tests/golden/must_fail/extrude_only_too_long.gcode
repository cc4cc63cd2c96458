; expect: extrude_only_too_long line 5 "Extrude only move too long (60.000mm vs 50.000mm)"
G28
M109 S200
M83
G1 E60 F300
