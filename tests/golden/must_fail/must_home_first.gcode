; expect: must_home_first line 3 "Must home axis first: 10.000 10.000"
M104 S200
G1 X10 Y10 F3000
