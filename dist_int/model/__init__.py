"""model: the neural fields (SIREN, hash grid) and the one chunked no-grad forward. Nothing here knows of
distribution; a field is picked by `model.kind` through `build_field` (docs/fields.md)."""

from .field import FIELDS, FieldSpec, bits_per_sample, build_field, field_spec, native_note
from .hash import HashEncoding, HashField
from .infer import Predict, forward_rows
from .siren import Siren

__all__ = ["FIELDS", "FieldSpec", "HashEncoding", "HashField", "Predict", "Siren", "bits_per_sample", "build_field", "field_spec",
           "forward_rows", "native_note"]
