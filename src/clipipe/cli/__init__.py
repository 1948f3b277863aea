"""clipipe.cli"""
