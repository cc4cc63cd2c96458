"""Regenerate must_block/*.gcode: in each case the lines marked "<<" are where the expected rule must fire.

Run: python tests/safety_golden/make_must_block.py
"""
from pathlib import Path

OUT = Path(__file__).parent / "must_block"
PRE = """G90
M82
M140 S60
M104 S210
G28
M190 S60
M109 S210
G92 E0
G1 Z0.3 F600
G1 X10 Y10 F6000"""

def cs(body: str) -> str:
    v = 0
    for b in body.encode():
        v ^= b
    return f"{body}*{v}"

# name: (rule, why it is unsafe, program with the expected lines marked '<<'); printer ender3-klipper
CASES = {
 "forbidden_m302": ("forbidden_command", "M302 allows cold extrusion", PRE + "\nM302 S0 <<\nG1 X20 E1"),
 "forbidden_m211": ("forbidden_command", "M211 S0 switches software endstops off", PRE + "\nM211 S0 <<"),
 "forbidden_m500": ("forbidden_command", "M500 writes EEPROM", PRE + "\nM92 E400 <<\nM500 <<"),
 "forbidden_m502": ("forbidden_command", "M502 factory reset", "M502 <<\n" + PRE),
 "forbidden_save_config": ("forbidden_command", "SAVE_CONFIG rewrites printer.cfg", PRE + "\nSAVE_CONFIG <<"),
 "forbidden_firmware_restart": ("forbidden_command", "FIRMWARE_RESTART mid-program", PRE + "\nFIRMWARE_RESTART <<"),
 "forbidden_set_kinematic_position": ("forbidden_command", "declares Z homed without homing",
     "SET_KINEMATIC_POSITION X=100 Y=100 Z=0 <<\nM104 S210"),
 "forbidden_force_move": ("forbidden_command", "FORCE_MOVE bypasses range checks",
     PRE + "\nFORCE_MOVE STEPPER=stepper_z DISTANCE=-20 VELOCITY=5 <<"),
 "forbidden_m906": ("forbidden_command", "motor current change", PRE + "\nM906 X1500 Y1500 <<"),
 "forbidden_m997": ("forbidden_command", "firmware update", "M997 <<"),
 "forbidden_pid_autotune_above_limit": ("forbidden_command", "PID autotune above the hotend's 250 C",
     "M303 E0 S300 C8 <<\nPID_CALIBRATE HEATER=extruder TARGET=210\nPID_CALIBRATE HEATER=extruder TARGET=290 <<"),
 "unknown_command": ("unknown_command", "loops and undeclared macros are denied by default",
     PRE + "\nM808 L20 <<\nG1 X20 E1\nM808 <<\nMY_SECRET_MACRO SPEED=9 <<"),
 "out_of_range": ("move_out_of_range", "X beyond position_max (235)", PRE + "\nG1 X240 Y10 <<"),
 "out_of_range_arc": ("move_out_of_range", "arc between in-range ends bulging past Y 235",
     PRE + "\nG1 X100 Y228\nG2 X120 Y228 I10 J0 E1 <<"),
 "relative_accumulation": ("move_out_of_range", "G91 steps of 50 mm add up past X 235",
     PRE + "\nG91\nG1 X50\nG1 X50\nG1 X50\nG1 X50\nG1 X50 <<"),
 "g92_reset_trick": ("z_into_bed", "G92 Z10 at Z 0.3 makes G1 Z1 go to machine Z -8.7",
     PRE + "\nG92 Z10\nG1 Z1 <<"),
 "g92_xy_trick": ("move_out_of_range", "G92 X0 at X 200 shifts the origin: X100 is machine X 300",
     PRE + "\nG1 X200\nG92 X0\nG1 X100 <<"),
 "not_homed": ("must_home_first", "move before G28", "M104 S210\nG1 X10 Y10 <<\nG28 X Y\nG1 Z5 <<"),
 "not_homed_after_m84": ("must_home_first", "M84 loses the position", PRE + "\nM84\nG1 X50 <<"),
 "cold_extrusion": ("cold_extrusion", "extrudes after M104 without waiting",
     "G28\nM104 S210\nG1 Z0.3 F600\nG1 X20 Y20 E1 <<"),
 "cold_extrusion_off": ("cold_extrusion", "extrudes after the hotend was turned off",
     PRE + "\nG1 X20 E1\nM104 S0\nG1 E-1\nG1 X30 E-0.5 <<"),
 "cross_section": ("extrusion_too_large", "10 mm of filament over a 10 mm line", PRE + "\nG1 X20 Y10 E10 <<"),
 "extrude_only_distance": ("extrude_only_too_long", "60 mm purge without motion (limit 50)",
     PRE + "\nG1 E60 F300 <<"),
 "heater_range": ("temperature_out_of_range", "targets above the hotend's 250 C and the bed's 130 C in every form",
     "M104 S260 <<\nM109 S300 <<\nM109 R255 <<\nM140 S140 <<\nM190 S150 <<\n"
     "SET_HEATER_TEMPERATURE HEATER=extruder TARGET=280 <<\nSET_HEATER_TEMPERATURE HEATER=heater_bed TARGET=131 <<\n"
     "PRINT_START BED=60 EXTRUDER=300 <<\nM104 S-5 <<\nSET_HEATER_TEMPERATURE HEATER=chamber TARGET=50 <<"),
 "heater_wait": ("heater_timeout", "waits for 240 C with a 210 C target: hangs with the heater on",
     PRE + "\nTEMPERATURE_WAIT SENSOR=extruder MINIMUM=240 <<"),
 "unknown_tool": ("unknown_tool", "T1 on a one-extruder printer", "M104 T1 S210 <<\n" + PRE),
 "feed_rate": ("feed_rate", "F30000 = 500 mm/s above 300 mm/s; F0 is invalid",
     PRE + "\nG1 X100 F30000 <<\nG0 X50 F0 <<\nSET_VELOCITY_LIMIT VELOCITY=600 <<"),
 "acceleration": ("acceleration", "accelerations above the profile's 3000 mm/s^2",
     PRE + "\nSET_VELOCITY_LIMIT ACCEL=50000 <<\nM204 S9000 <<"),
 "factor_range": ("factor_range", "speed 300 % and flow 200 %", PRE + "\nM220 S300 <<\nM221 S200 <<"),
 "z_into_bed": ("z_into_bed", "Z below the bed surface, and extruding at Z 0",
     PRE + "\nG1 Z-0.5 <<\nG1 Z0\nG1 X30 E1 <<"),
 "gcode_offset": ("gcode_offset", "SET_GCODE_OFFSET Z=-3 shifts the print 3 mm into the bed",
     PRE + "\nSET_GCODE_OFFSET Z=-3 <<\nSET_GCODE_OFFSET Z=0\nSET_GCODE_OFFSET Z_ADJUST=0.05\nSET_GCODE_OFFSET Z_ADJUST=-2 <<"),
 "gcode_offset_into_bed": ("z_into_bed", "a small offset that moves an extruding Z 0.3 layer to Z 0",
     PRE + "\nSET_GCODE_OFFSET Z=-0.3\nG1 X30 E1\nG1 X40 Z0.3 E2 <<"),
 "restore_state": ("move_out_of_range", "SAVE/RESTORE_GCODE_STATE brings back absolute mode and G92 offsets",
     PRE + "\nG1 X200\nG92 X0\nSAVE_GCODE_STATE NAME=s\nG28 X\nG91\nRESTORE_GCODE_STATE NAME=s\nG1 X100 <<"),
 "hidden_in_comment": ("hidden_in_comment", "words a firmware without ( ) comments would run",
     PRE + "\nG1 X20 (Z-5 <<\nG1 X30 (Z-5) <<\nG1 X40 (just a note)"),
 "ambiguous_line": ("ambiguous_line", "repeated words and two commands on one line",
     PRE + "\nG1 X10 X30 <<\nG4 P10 M302 <<"),
 "checksum_mismatch": ("checksum_mismatch", "line changed after it was numbered",
     PRE + "\n" + cs("N10 G1 X20") + "\nN11 G1 X30*7 <<"),
 "bad_argument": ("invalid_command", "an extra axis letter and a non-number",
     PRE + "\nG1 X20 A10 <<\nSET_HEATER_TEMPERATURE HEATER=extruder TARGET=hot <<\nRESTORE_GCODE_STATE NAME=none <<"),
 # Disguises: each hides a forbidden command from a naive scanner; the reader normalises all of them.
 "disguise_lower_case": ("forbidden_command", "m302 and save_config in lower case",
     PRE + "\nm302 s0 <<\nsave_config <<"),
 "disguise_spacing": ("forbidden_command", "spaces and tabs inside the command",
     PRE + "\nM 302 <<\n   \tM500\t <<\nM\t92 E93 <<"),
 "disguise_leading_zeros": ("forbidden_command", "M0302 is M302", PRE + "\nM0302 <<\nM00500 <<"),
 "disguise_line_number_checksum": ("forbidden_command", "N-numbered with valid checksums",
     PRE + "\n" + cs("N20 M302 S0") + " <<\n" + cs("N21 SAVE_CONFIG") + " <<\nN22M500 <<"),
 "disguise_paren_comment": ("forbidden_command", "( ) comments before and inside",
     PRE + "\n(harmless note) M302 <<\nM(note)500 <<"),
 "disguise_safe_after_semicolon": ("forbidden_command", "a safe command written after ';'",
     PRE + "\nM302 ; G1 X10 <<\nSAVE_CONFIG;G4 P1 <<"),
 "disguise_subcode": ("forbidden_command", "subcodes of forbidden codes", PRE + "\nM500.1 <<\nM302.0 <<"),
 "disguise_crlf": ("forbidden_command", "CRLF and lone CR line endings", None),
}

for old in OUT.glob("*.gcode"):
    old.unlink()
for name, (rule, why, body) in CASES.items():
    if body is None:
        continue
    lines = body.split("\n")
    header = [f"; expect: {rule}", f"; {why}"]
    out = [line.replace(" <<", "").replace("<<", "") for line in lines]
    expected = [len(header) + i + 1 for i, line in enumerate(lines) if line.endswith("<<")]
    header[0] = f"; expect: {rule} at lines {', '.join(map(str, expected))}"
    (OUT / f"{name}.gcode").write_text("\n".join(header + out) + "\n")
# CRLF and lone CR endings: bytes written by hand.
data = ("; expect: forbidden_command at lines 4, 5\r\n; CRLF and lone CR endings\r\n"
        "G28\r\nM302\rSAVE_CONFIG\r\nG4 P1\r\n")
(OUT / "disguise_crlf.gcode").write_bytes(data.encode())
print(len(list(OUT.glob("*.gcode"))), "files")
