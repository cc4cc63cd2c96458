; expect: forbidden_command at lines 3
; declares Z homed without homing
SET_KINEMATIC_POSITION X=100 Y=100 Z=0
M104 S210
