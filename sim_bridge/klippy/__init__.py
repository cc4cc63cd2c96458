"""Klippy (the Klipper host) as an external system: its command line (:mod:`.host`), the MCU data
dictionary derived from its source (:mod:`.dictionary`) and a ``printer.cfg`` written from a printer
profile (:mod:`.printer_cfg`). The batch backend and the virtual printer build on these.
"""
