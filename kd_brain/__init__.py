"""KD-Noise: teacher-student training for noise-robust CTC speech recognition, the library of recipes/KD-Noise."""
