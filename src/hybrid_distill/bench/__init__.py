"""`hybrid-distill bench`: the optimised distillation step against a plain one, phase by phase."""
