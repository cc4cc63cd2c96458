; expect: thermal_runaway line 3 "Heater extruder not heating at expected rate"
; printer: tests/golden/weak_heater.yaml
M109 S240
