"""darkroom.timeseries"""
