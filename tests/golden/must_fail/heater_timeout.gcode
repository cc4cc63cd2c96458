; expect: heater_timeout line 3 "did not reach its target"
; printer: tests/golden/slow_bed.yaml
M190 S125
