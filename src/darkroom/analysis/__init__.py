"""darkroom.analysis"""
