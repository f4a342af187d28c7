// The F16 matrix-vector kernel's memory access alone: the memory-mapped file
// as rows of 576 f16 weights, T threads each taking 1/T of the rows in tiles
// of RM rows stepped in lockstep (one 8-lane FMA chain a row, as strata's
// float tile), each step prefetching one line PF tiles ahead (0: none) with
// hint HINT (0: prefetcht0, 1: prefetcht1, 2: prefetchnta).
//   gcc -O2 -o mv mv.c -lpthread
//   FILE=f.gguf ./mv T RM PF HINT REPS
#define _GNU_SOURCE
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
static double now(void){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static uint8_t*buf; static size_t N; static int T, RM, PFT, HINT, C=576; static float x[2048]; volatile float sink[64];
static pthread_barrier_t bar; static double ts[64], te[64];
#define PF(p) do{ if(HINT==0)_mm_prefetch((const char*)(p),_MM_HINT_T0); else if(HINT==1)_mm_prefetch((const char*)(p),_MM_HINT_T1); else _mm_prefetch((const char*)(p),_MM_HINT_NTA);}while(0)
__attribute__((target("avx2,f16c,fma"))) static float tile4(const uint8_t*w, size_t rb, int steps, const uint8_t*pf, int dopf){
  __m256 a0=_mm256_setzero_ps(),a1=a0,a2=a0,a3=a0;
  for(int s=0;s<steps;s++){ __m256 xv=_mm256_loadu_ps(x+8*s);
    a0=_mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((void*)(w+16*s))),xv,a0);
    a1=_mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((void*)(w+rb+16*s))),xv,a1);
    a2=_mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((void*)(w+2*rb+16*s))),xv,a2);
    a3=_mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((void*)(w+3*rb+16*s))),xv,a3);
    if(dopf) PF(pf+64*s);
  }
  __m256 t=_mm256_add_ps(_mm256_add_ps(a0,a1),_mm256_add_ps(a2,a3)); float f[8]; _mm256_storeu_ps(f,t); return f[0];}
__attribute__((target("avx2,f16c,fma"))) static float tile8(const uint8_t*w, size_t rb, int steps, const uint8_t*pf, int dopf){
  __m256 a[8]; for(int i=0;i<8;i++)a[i]=_mm256_setzero_ps();
  for(int s=0;s<steps;s++){ __m256 xv=_mm256_loadu_ps(x+8*s);
#pragma GCC unroll 8
    for(int i=0;i<8;i++) a[i]=_mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((void*)(w+i*rb+16*s))),xv,a[i]);
    if(dopf){ PF(pf+128*s); PF(pf+128*s+64);}
  }
  __m256 t=a[0]; for(int i=1;i<8;i++)t=_mm256_add_ps(t,a[i]); float f[8]; _mm256_storeu_ps(f,t); return f[0];}
static void *work(void*arg){ long id=(long)arg; cpu_set_t s; CPU_ZERO(&s); CPU_SET(id,&s); pthread_setaffinity_np(pthread_self(),sizeof s,&s);
  size_t rb=2*C, rows=N/rb, per=rows/T/RM*RM; const uint8_t*w=buf+id*per*rb; int steps=C/8; float acc=0;
  pthread_barrier_wait(&bar); ts[id]=now();
  for(size_t r=0;r<per;r+=RM){ const uint8_t*t=w+r*rb; const uint8_t*pf=t+PFT*RM*rb;
    acc+= RM==4? tile4(t,rb,steps,pf,PFT>0): tile8(t,rb,steps,pf,PFT>0); }
  te[id]=now(); sink[id]=acc; return 0;}
int main(int c,char**v){ T=atoi(v[1]); RM=atoi(v[2]); PFT=atoi(v[3]); HINT=atoi(v[4]); int reps=atoi(v[5]);
  int fd=open(getenv("FILE"),O_RDONLY); struct stat st; fstat(fd,&st); N=st.st_size; buf=mmap(0,N,PROT_READ,MAP_PRIVATE,fd,0);
  for(int i=0;i<2048;i++)x[i]=i*1e-3f; double best=1e9;
  for(int r=0;r<reps;r++){ pthread_t th[8]; pthread_barrier_init(&bar,0,T); for(long i=0;i<T;i++)pthread_create(&th[i],0,work,(void*)i); for(int i=0;i<T;i++)pthread_join(th[i],0);
    double a=1e30,b=0; for(int i=0;i<T;i++){if(ts[i]<a)a=ts[i]; if(te[i]>b)b=te[i];} if(b-a<best)best=b-a; pthread_barrier_destroy(&bar);}
  size_t rb=2*C, rows=N/rb, per=rows/T/RM*RM; printf("T=%d RM=%d pf=%d hint=%d  %.1f GB/s\n",T,RM,PFT,HINT, per*T*rb/best/1e9); }
