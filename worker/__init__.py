"""conveyor.worker"""
