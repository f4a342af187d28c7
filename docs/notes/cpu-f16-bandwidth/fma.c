// Peak of 256-bit f32 FMAs: T threads, 12 independent chains each.
//   gcc -O2 -o fma fma.c -lpthread && ./fma T ITERATIONS
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static float sink[16]; static long ITER=200000000;
__attribute__((target("avx2,fma")))
static void *work(void*arg){ long id=(long)arg;
  cpu_set_t s; CPU_ZERO(&s); CPU_SET(id,&s); pthread_setaffinity_np(pthread_self(),sizeof s,&s);
  __m256 a[12]; for(int i=0;i<12;i++) a[i]=_mm256_set1_ps(i);
  __m256 x=_mm256_set1_ps(0.999f), y=_mm256_set1_ps(1e-6f);
  for(long k=0;k<ITER;k++){
#pragma GCC unroll 12
    for(int i=0;i<12;i++) a[i]=_mm256_fmadd_ps(a[i],x,y);
    __asm__ volatile(""::"x"(a[0]),"x"(a[1]),"x"(a[2]),"x"(a[3]),"x"(a[4]),"x"(a[5]),"x"(a[6]),"x"(a[7]),"x"(a[8]),"x"(a[9]),"x"(a[10]),"x"(a[11]));
  }
  float f[8]; _mm256_storeu_ps(f,a[0]); sink[id]=f[0]; return 0; }
int main(int c,char**v){ int T=atoi(v[1]); ITER=atol(v[2]); double best=0;
 for(int r=0;r<5;r++){ pthread_t th[8]; double t0=now();
  for(long i=0;i<T;i++) pthread_create(&th[i],0,work,(void*)i);
  for(int i=0;i<T;i++) pthread_join(th[i],0);
  double g=T*ITER*12.0*16/(now()-t0)/1e9; if(g>best)best=g; }
 printf("threads=%d best %.1f GFLOPS (f32 256-bit FMA)\n",T,best); }
