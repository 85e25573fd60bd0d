"""Neural networks. No video, no OpenCV, no files here: tensors in, tensors out."""
