"""What every model family shares: the trainer loop and checkpoints (`trainer`), ONNX export,
parity and the model card (`export`), the evaluation frame (`evaluate`), network pieces
(`layers`), phantom drawing (`draw`) and structure maps (`structure`), the phantom DICOM
writer (`phantom_dicom`) and the subject splits (`split`). A family imports from here and
never from another family."""
