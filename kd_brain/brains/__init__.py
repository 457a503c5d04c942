"""SpeechBrain Brains: teacher (CTC), student (KD), soft-label extraction, evaluation, pseudo-labels."""
