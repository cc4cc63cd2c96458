; expect: unknown_command at lines 5, 6; invalid_command at lines 7, 8
; PrusaSlicer's Marlin header on a Prunt printer (prunt-sim): Prunt has no M201/M203, and its M205 takes
; one of A J S C D L (Marlin's jerk words are refused; M205 S0 T0 is refused for the T). Prunt would stop
; at line 5 and skip the rest of the file; the validator lists every line Prunt refuses.
M201 X1000 Y1000 Z500 E10000
M203 X300 Y300 Z10 E120
M205 X10.00 Y10.00 Z0.20 E2.50
M205 S0 T0
M204 P1000 R1500 T1500
G28
M104 S215
M109 S215
G90
M83
G1 Z0.2 F600
G1 X100 Y100 F6000
G1 X120 Y100 E0.75 F1800
