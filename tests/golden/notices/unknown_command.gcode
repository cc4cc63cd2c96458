; expect: unknown_command line 3 "Unknown command:\"FROBNICATE\""
G28
FROBNICATE SPEED=3
