/* CUDA emulator (tests only): bf16 and f16 device types (see emu_device.h). */
#include "emu_device.h"
