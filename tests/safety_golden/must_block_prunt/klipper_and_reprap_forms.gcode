; expect: unknown_command at lines 8, 13; invalid_command at lines 9, 10, 11, 12, 14
; Forms other firmwares accept and Prunt refuses: a Klipper macro, N line numbers with a checksum, a
; parenthesis comment, a tab, an arc, a tool change.
G28
M104 S215
M109 S215
M83
G2 X10 Y10 I5 J0
PRINT_START BED=60 EXTRUDER=215
N10 G1 X5 Y5*24
G1 X20 Y20 (move to the start)
G1	X30	Y30
G29
T0
G1 X40 Y40 F3000
