"""Field mapping and data filters (F16, F17): conversion rules, formulas (sandboxed Jinja2
expressions), fixed values and filter conditions, loaded from include/mappings/.

    lib = MappingLibrary.load(Path("include/mappings"))
    fields = lib.mapping("office365_forward").apply(forward_record(event, ...), variables)
    reason = lib.filters(["skip_cancelled"], direction="forward").skip_reason(record)
"""

from calsync.mapping.library import FieldMapping, FilterSet, MappingLibrary

__all__ = ["FieldMapping", "FilterSet", "MappingLibrary"]
