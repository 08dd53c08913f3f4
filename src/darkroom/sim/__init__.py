"""darkroom.sim"""
