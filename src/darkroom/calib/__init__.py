"""darkroom.calib"""
