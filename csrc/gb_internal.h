/* Declarations shared between the C sources but not bound by cffi. */
#ifndef GB_INTERNAL_H
#define GB_INTERNAL_H

#define GB_SELU_LAMBDA 1.0507009873554804934193349852946
#define GB_SELU_ALPHA 1.6732632423543772848170429916717
#define GB_SQRT_HALF 0.70710678118654752440084436210485
#define GB_INV_SQRT_2PI 0.39894228040143267793994605993438

/* phi and phi' of one value: the building blocks of every layer kernel. */
double gb_phi_f64(double z, int act, double p);
double gb_dphi_f64(double z, int act, double p);
float gb_phi_f32(float z, int act, float p);
float gb_dphi_f32(float z, int act, float p);

#endif
