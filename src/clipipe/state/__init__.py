"""clipipe.state"""
