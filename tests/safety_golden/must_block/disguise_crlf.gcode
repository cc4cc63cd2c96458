; expect: forbidden_command at lines 4, 5
; CRLF and lone CR endings
G28
M302SAVE_CONFIG
G4 P1
