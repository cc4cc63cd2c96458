"""G-code, printers and simulators: the reader and writer, printer profiles, the embedded print simulator
and the bridges to real simulators and printers. Imports none of layerloop's other packages."""

from sim_bridge.gcode import Command, GcodeError, GcodeReader, GcodeWarning, parse_line, read_gcode
from sim_bridge.options import SimOptions
from sim_bridge.printers import load_material, load_printer
from sim_bridge.profiles import Material, PrinterProfile
from sim_bridge.report import Failure, PrintReport
from sim_bridge.simulator import Simulator, simulate

__all__ = [
    "Command", "Failure", "GcodeError", "GcodeReader", "GcodeWarning", "Material", "PrintReport",
    "PrinterProfile", "SimOptions", "Simulator", "load_material", "load_printer", "parse_line", "read_gcode",
    "simulate",
]
