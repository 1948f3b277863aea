"""clipipe.targets"""
