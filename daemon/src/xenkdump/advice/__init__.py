"""Advice for the administrator: is the crash area Xen reserved (crashkernel=) right?"""
