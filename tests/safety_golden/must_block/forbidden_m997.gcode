; expect: forbidden-command at lines 3
; firmware update
M997
