; expect: forbidden_command at lines 3
; firmware update
M997
