"""clipipe.engine"""
