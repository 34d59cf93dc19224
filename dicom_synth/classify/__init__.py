"""Series recognition and routing (seed 001, issue 4).

`classify_series(slices, volume)` -> `Classification(label, confidence, evidence, route)`;
`load_routing(path)` -> `RoutingTable` with `.route(label)`. Header rules live in
`rules.yaml`, routes in `routing.yaml`: both are meant to be edited by users.
"""

from dicom_synth.classify.classifier import Classification, classify_series
from dicom_synth.classify.labels import LABELS, UNKNOWN
from dicom_synth.classify.routing import RoutingTable, load_routing

__all__ = ["LABELS", "UNKNOWN", "Classification", "RoutingTable", "classify_series", "load_routing"]
